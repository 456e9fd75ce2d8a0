"""Tasks: a problem source, the two roles' prompts and the reward (``Task``). ``ToyTask``: the demo's
digit task; ``MathTask``: problems with final answers in a chat template, final-answer rewards;
``ReasoningGymTask``: reasoning-gym's generators and scorers."""

from spiral_fast.tasks.base import Task
from spiral_fast.tasks.math import MathTask
from spiral_fast.tasks.reasoning_gym import ReasoningGymTask
from spiral_fast.tasks.toy import ToyTask

__all__ = ["MathTask", "ReasoningGymTask", "Task", "ToyTask"]
