"""The file the Lambda runtime imports (`CMD ["handler.handler"]`): INIT builds the one app.

Everything lives in services/adapters/aws_lambda.py; settings come from the environment
(MODEL_PATH, MAX_CONTENT_LENGTH, CORS_ALLOW_ORIGINS, EMF_METRICS, ...: docs/serving.md).
"""

from services.adapters.aws_lambda import make_handler

handler = make_handler()
