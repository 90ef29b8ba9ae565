"""Training: candidate labels, the LUNA16 data module, the classifier, callbacks and the CLI."""
