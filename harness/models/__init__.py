"""Which model: the generated example and zoo models, and resolving a model argument."""
