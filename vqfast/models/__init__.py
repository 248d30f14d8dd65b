"""Tokenizers and token models; import each from its module (e.g. `vqfast.models.maskgit`)."""
