"""Thin adapters that put the one app on a platform: AWS Lambda (apig-wsgi) and SageMaker."""
