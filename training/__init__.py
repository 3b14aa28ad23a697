"""Offline MulCoT-RD distillation: teacher -> assistant -> student, augmentation, evaluation."""
