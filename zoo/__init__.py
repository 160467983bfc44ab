"""The model zoo: CRATE variants, datasets, run configurations, training to a CE target, the run store and the
runner."""
from .errors import BadValueError, MissingInputError, UnknownNameError, UsageError
from .data import DATASETS, Dataset, DatasetError, load_dataset
from .config import DataConfig, RunConfig, config_from_dict
from .models import MAIN_VARIANTS, VARIANTS, CRATE, ModelConfig, build_model, count_parameters
from .runner import build_zoo, load_zoo, train_run
from .store import RunStore, StoreError
from .train import TrainConfig, evaluate, train_model

__all__ = ["UsageError", "BadValueError", "MissingInputError", "UnknownNameError", "DATASETS", "Dataset",
           "DatasetError", "load_dataset", "DataConfig", "RunConfig", "config_from_dict", "MAIN_VARIANTS",
           "VARIANTS", "CRATE", "ModelConfig", "build_model", "count_parameters", "build_zoo", "load_zoo",
           "train_run", "RunStore", "StoreError", "TrainConfig", "evaluate", "train_model"]
