"""msafety-bench: pytest-native benchmark and regression suite for multilingual LLM safety.

The package is laid out in pipeline order: data -> models -> editing -> generation -> judges ->
metrics -> results -> plugin (gates and terminal report). Importing it stays cheap: torch and
transformers are imported only by the stages that need them.
"""

__version__ = "0.1.0"
