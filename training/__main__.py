"""`python -m training` is `python training/train.py`."""

from training.train import cli

if __name__ == "__main__":
    cli()
