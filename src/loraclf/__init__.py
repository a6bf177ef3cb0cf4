"""loraclf: fine-tune pretrained encoders for text classification with LoRA under a hard budget of
trainable parameters.

The public API is small:
    cfg = loraclf.load_config("agnews-quick", overrides=["train.epochs=1"])
    result = loraclf.train(cfg, ["train.csv"], "runs/x", test_data=["test.csv"])
    loraclf.count(cfg, ["World", "Sports", "Business", "Sci/Tech"])   # exact budget, no weights loaded
    loraclf.predict("runs/x", "unlabelled.pkl", "submission.csv")
"""
__version__ = "0.1.0"

from .config import Config
from .config import load as load_config
from .errors import UserError


def train(cfg, data, out, **kw):
    from .pipeline import train as _train
    return _train(cfg, list(data), out, **kw)


def count(cfg, label_names):
    from .budget import count_config
    return count_config(cfg, list(label_names))


def predict(run_dir, source, out, **kw):
    from .predict import run
    return run(run_dir, source, out, **kw)


def evaluate(run_dir, data, **kw):
    from .pipeline import evaluate as _evaluate
    return _evaluate(run_dir, list(data), **kw)


__all__ = ["Config", "UserError", "load_config", "train", "count", "predict", "evaluate", "__version__"]
