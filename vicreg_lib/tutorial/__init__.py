"""What the notebooks use around the library: their settings from the environment (notebook_env),
every figure (plotting), a run watched live (monitor) and 2-D maps of embeddings (embedding_maps).
Nothing in the VICReg core imports these."""
