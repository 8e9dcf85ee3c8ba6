"""ONNX-only serving core for the MHIST classifier (no torch, torchvision or mlflow here)."""
