"""Training: the LightningModule, callbacks, strategies, run directories (``train(recipe)``)."""
