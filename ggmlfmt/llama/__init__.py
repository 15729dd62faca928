"""What the project knows about LLaMA models: tensor names and split rules, hyper-parameters, vocabularies, GGUF metadata."""
