"""Model descriptors: logit footprints and perplexity fingerprints."""
