"""The product: corpora, tokenizers, model directories, runs, checkpoints, evaluation, search,
maps, exports, many processes and the command line, around the textbook (minembed/core)."""
