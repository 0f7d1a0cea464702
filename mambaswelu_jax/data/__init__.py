"""Data: sources -> SentencePiece tokenizer -> grain pipeline.

  sources      make_source(data_cfg): embedded (stdlib), slimpajama, wikipedia
  tokenizer    train_tokenizer, load_tokenizer, prepare_tokenizer; the CLI trains
               the shared study tokenizer
  pipeline     make_train_dataset (resumable grain training batches),
               make_eval_batches (deterministic eval batches with byte counts)
  pretokenize  the CLI writing token shards; TokenShards / TokenWindows readers
  smoke_sample ensure_sample: the small SlimPajama / Wikipedia samples in their real
               formats, written from the embedded corpus, that `:smoke` configs read
               when no data.data_dir is given
  testing      write_slimpajama: a small SlimPajama-layout directory with broken
               records, for tests of code that reads data

TensorFlow / tfds are imported only inside the wikipedia source.
"""
