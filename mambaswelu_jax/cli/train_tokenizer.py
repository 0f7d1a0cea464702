r"""Trains the shared study tokenizer (the command line of `data.tokenizer`).

  python -m mambaswelu_jax.cli.train_tokenizer --sources=slimpajama,wikipedia \\
      --slimpajama_dir=/data/SlimPajama-627B --wikipedia_data_dir=/data/tfds \\
      --vocab_size=50257 --output=/data/study_tokenizer.model
"""

import argparse
import sys

from mambaswelu_jax.data import sources as sources_lib
from mambaswelu_jax.data import tokenizer as tokenizer_lib


def main(argv=None) -> None:
  """Trains the shared study tokenizer on a byte budget split over sources."""
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("--sources", default="slimpajama,wikipedia",
                      help="comma-separated: embedded, slimpajama, wikipedia")
  parser.add_argument("--slimpajama_dir", default="")
  parser.add_argument("--wikipedia_data_dir", default="")
  parser.add_argument("--wikipedia_config", default="20230601.en")
  parser.add_argument("--try_gcs", action="store_true")
  parser.add_argument("--vocab_size", type=int, default=50257)
  parser.add_argument("--sample_bytes", type=int, default=300_000_000,
                      help="total training text, split evenly over sources")
  parser.add_argument("--model_type", default="bpe")
  parser.add_argument("--output", required=True)
  args = parser.parse_args(argv)
  names = [n for n in args.sources.split(",") if n]
  per_source = args.sample_bytes // max(1, len(names))
  srcs = []
  for name in names:
    cfg = {"source": name, "wikipedia_config": args.wikipedia_config,
           "try_gcs": args.try_gcs,
           "data_dir": {"slimpajama": args.slimpajama_dir,
                        "wikipedia": args.wikipedia_data_dir}.get(name, "")}
    srcs.append(sources_lib.make_source(cfg))

  def texts():
    for src in srcs:
      yield from tokenizer_lib.sample_texts(src.documents("train"), per_source)

  tok = tokenizer_lib.train_tokenizer(texts(), args.vocab_size, args.output,
                        model_type=args.model_type,
                        sample_bytes=args.sample_bytes,
                        description={"sources": names})
  print(f"wrote {args.output}: vocab_size={tok.vocab_size} "
        f"eos_id={tok.eos_id} bos_id={tok.bos_id}", file=sys.stderr)


def run() -> None:
  """The command (`python -m ...` and the `mambaswelu-train-tokenizer` console script)."""
  main()


if __name__ == "__main__":
  run()
