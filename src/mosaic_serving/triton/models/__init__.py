"""One Triton model class per handler; each `model_repository/<name>/1/model.py` imports one."""
