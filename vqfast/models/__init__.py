"""The five model families, one package each, all speaking one protocol.

`maskgit`, `put`, `mqvae` (MQ-VAE + Stackformer), `rq` (RQ-VAE + Contextual RQ-Transformer)
and `vqddm` each hold their paper's tokenizer, token model, losses, presets and sampler(s);
`common` holds the blocks they share (conv tokenizer blocks, transformer blocks, GAN and
perceptual losses, the inference copy, mask schedules, the protocol's output types).
Imports point one way: family -> common -> quantizers / ops -> kernels.
"""
