"""How a model family is driven: adapter protocols, the zoo and Hugging Face adapters, image loading."""
