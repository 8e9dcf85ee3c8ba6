"""Deploy helpers shared by lambda/deploy.py and sagemaker/deploy.py (never copied into images)."""
