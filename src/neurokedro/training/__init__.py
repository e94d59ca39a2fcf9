"""The Lightning training loop shared by every task: data, module, callbacks, fit."""
