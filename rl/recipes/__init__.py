"""The commands' recipes: each reads its settings and composes the components (train, sft, orm, ...)."""
