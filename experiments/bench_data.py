"""Data benchmark: the embedded corpus, and tokens/s of the training pipelines.

  python experiments/bench_data.py [--vocab_size=8192] [--seq_len=1024]
      [--batch=16] [--seconds=8] [--workers=0,1,2] [--tokenizer=PATH]

Prints the embedded corpus size per text type and split, the tokenizer training
time, the on-the-fly pipeline's tokens/s per worker count (tokenization in grain
workers, packing and batching in this process), the pre-tokenization speed and
the pre-tokenized (memmap shards) pipeline's tokens/s from this one process, and the
bytes of token data each data stream (process) reads from the shards when the global
batch is split over 1, 2 and 4 streams.
"""

import argparse
import os
import tempfile
import time

import ml_collections

from mambaswelu_jax.data import pipeline, pretokenize, sources, tokenizer


def tokens_per_second(ds, batch, seq_len, seconds, warmup=3):
  it = iter(ds)
  for _ in range(warmup):  # worker start-up and first documents
    next(it)
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(it)
    n += 1
  rate = n * batch * seq_len / (time.perf_counter() - start)
  if hasattr(it, "close"):
    it.close()
  return rate


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--vocab_size", type=int, default=8192)
  parser.add_argument("--seq_len", type=int, default=1024)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seconds", type=float, default=8.0)
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--tokenizer", default="")
  args = parser.parse_args()
  tmp = tempfile.mkdtemp(prefix="bench_data_")

  start = time.perf_counter()
  source = sources.make_source({"source": "embedded"})
  info = source.describe()
  print(f"embedded corpus: Python {info['python']} stdlib at {info['root']}: "
        f"{info['documents']} documents, {info['bytes'] / 1e6:.2f} MB "
        f"(parsed in {time.perf_counter() - start:.1f}s)")
  for text_type in source.text_types:
    per = {s: info["bytes_by_type_split"].get((text_type, s), 0)
           for s in sources.SPLITS}
    print(f"  {text_type:10s} " + "  ".join(
        f"{s} {b / 1e6:.2f} MB" for s, b in per.items()))

  if args.tokenizer:
    tok = tokenizer.load_tokenizer(args.tokenizer)
  else:
    start = time.perf_counter()
    tok = tokenizer.train_tokenizer(
        tokenizer.sample_texts(source.documents("train"), 8_000_000),
        args.vocab_size, os.path.join(tmp, "tokenizer.model"))
    print(f"tokenizer: vocab {tok.vocab_size} trained on 8 MB in "
          f"{time.perf_counter() - start:.1f}s")
  text_bytes = sum(len(d["text"].encode()) for d in source.documents("train"))

  cfg = ml_collections.ConfigDict({"seq_len": args.seq_len, "num_workers": 0})
  for workers in [int(w) for w in args.workers.split(",") if w]:
    ds = pipeline.make_train_dataset(cfg, tok, args.batch, seed=0,
                                     source=source, num_workers=workers)
    rate = tokens_per_second(ds, args.batch, args.seq_len, args.seconds)
    print(f"on-the-fly pipeline, num_workers={workers}: {rate / 1e6:.2f}M "
          f"tokens/s ({os.cpu_count()} CPUs)")

  start = time.perf_counter()
  index = pretokenize.pretokenize_split(source, tok, "train", tmp)
  elapsed = time.perf_counter() - start
  n_tokens = sum(s["tokens"] for s in index["shards"])
  print(f"pre-tokenize: {n_tokens / 1e6:.2f}M tokens "
        f"({text_bytes / n_tokens:.2f} bytes/token) in {elapsed:.1f}s = "
        f"{n_tokens / elapsed / 1e6:.2f}M tokens/s")
  cfg.pretokenized_dir = tmp
  ds = pipeline.make_train_dataset(cfg, tok, args.batch, seed=0)
  rate = tokens_per_second(ds, args.batch, args.seq_len, args.seconds)
  print(f"pre-tokenized pipeline (memmap shards, 1 process): {rate / 1e6:.2f}M "
        f"tokens/s")
  bytes_per_stream(cfg, tok, args.batch, args.seq_len)


def bytes_per_stream(cfg, tok, batch: int, seq_len: int, steps: int = 20) -> None:
  """Bytes of token data each stream reads for `steps` global batches (each a share of
  the batch), against what the global batches hold and the shards' size."""
  shards = pretokenize.TokenShards(os.path.join(cfg.pretokenized_dir, "train"))
  total = shards.num_tokens * shards.itemsize
  needed = steps * batch * (seq_len + 1) * shards.itemsize
  print(f"bytes read per data stream over {steps} global batches of {batch} x "
        f"{seq_len + 1} tokens ({needed / 1e6:.2f} MB of tokens; shards {total / 1e6:.2f} MB):")
  for streams in (1, 2, 4):
    read = []
    for k in range(streams):
      ds = pipeline.make_train_dataset(cfg, tok, batch, seed=0, process_index=k,
                                       process_count=streams)
      it = iter(ds)
      for _ in range(steps):
        next(it)
      read.append(ds.shards.bytes_read)
    share = needed / streams  # the rows one stream feeds
    print(f"  {streams} stream(s): " + ", ".join(f"{b / 1e6:.3f} MB" for b in read)
          + f"; its rows are {share / 1e6:.3f} MB (the rest is grain's read-ahead); "
          f"together {sum(read) / total:.4f} of the shards")


if __name__ == "__main__":
  main()
