"""The blueprints of the one app: api (predict), ops (probes, metadata, metrics, OpenAPI),
ui (the upload page) and sagemaker (the SageMaker contract, on that target only)."""
