"""Checks a data source before a run: its documents, bytes and skipped records per
text type and split.

  python -m mambaswelu_jax.cli.check_data --source=slimpajama --data_dir=... --splits=validation
"""

import argparse
import collections
import sys

from mambaswelu_jax.data import sources


def main(argv=None) -> None:
  """Checks a source and prints its documents, bytes and skips per type."""
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("--source", default="embedded")
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--wikipedia_config", default="20230601.en")
  parser.add_argument("--try_gcs", action="store_true")
  parser.add_argument("--text_types", default="")
  parser.add_argument("--smoke_sample", action="store_true",
                      help="no --data_dir: write (once) and read the small sample "
                           "that :smoke configs use")
  parser.add_argument("--splits", default="validation")
  parser.add_argument("--limit", type=int, default=0,
                      help="stop each split after this many documents (0: all)")
  args = parser.parse_args(argv)
  splits = [s for s in args.splits.split(",") if s]
  try:
    source = sources.make_source(vars(args), splits=splits)
  except sources.DataError as e:
    print(f"error: {e}".replace("\n", " "), file=sys.stderr)
    sys.exit(2)
  print(f"{source.name}: text types {source.text_types}")
  for split in splits:
    docs, nbytes = collections.Counter(), collections.Counter()
    for i, doc in enumerate(source.documents(split)):
      docs[doc["text_type"]] += 1
      nbytes[doc["text_type"]] += len(doc["text"].encode("utf-8"))
      if args.limit and i + 1 >= args.limit:
        break
    for t in source.text_types:
      print(f"  {split:10s} {t:24s} {docs[t]:9d} documents "
            f"{nbytes[t] / 1e6:10.2f} MB")
    print(f"  {split:10s} skipped: {dict(source.skipped[split]) or 'none'}")


def run() -> None:
  """The command (`python -m ...` and the `mambaswelu-check-data` console script)."""
  main()


if __name__ == "__main__":
  run()
