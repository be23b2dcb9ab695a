"""Training: recipes, the loop every task shares, checkpoints that resume exactly, the tasks,
distributed helpers and evaluation."""
from .loop import TrainingStopped, train
from .optim import train_step
from .recipes import DEFAULTS, list_recipes, load_recipe

__all__ = ["DEFAULTS", "TrainingStopped", "list_recipes", "load_recipe", "train", "train_step"]
