"""Building blocks shared by the families: conv tokenizer blocks, transformer blocks, GAN and
perceptual losses, mask schedules, the inference copy and the protocol's output types."""
