r"""The command line of `data.pretokenize`: a source's splits -> token shards.

  python -m mambaswelu_jax.cli.pretokenize --source=slimpajama \\
      --data_dir=/data/SlimPajama-627B --tokenizer=/data/study_tokenizer.model \\
      --output_dir=/data/slimpajama_tok --splits=train,validation [--num_tasks=N --task_index=i]

Big splits spread over tasks (each its part of the source, into
`<split>/task_<i>-of-<N>/`); as a SLURM array job `--num_tasks=0 --task_index=-1`
take both from SLURM's array variables:

  sbatch --array=0-63 --wrap="python -m mambaswelu_jax.cli.pretokenize ... \\
      --num_tasks=0 --task_index=-1"
"""

import argparse
import os
import sys
import time

from mambaswelu_jax.data import pretokenize
from mambaswelu_jax.data import sources as sources_lib
from mambaswelu_jax.data import tokenizer as tokenizer_lib


def _task(task_index: int, num_tasks: int, parser) -> tuple[int, int]:
  """(task index, number of tasks), from SLURM's array variables where asked (-1, 0)."""
  env = os.environ
  if num_tasks == 0:
    if "SLURM_ARRAY_TASK_COUNT" not in env:
      parser.error("--num_tasks=0 reads SLURM_ARRAY_TASK_COUNT, which is not set (not "
                   "in a SLURM array job): give --num_tasks=N")
    num_tasks = int(env["SLURM_ARRAY_TASK_COUNT"])
  if task_index < 0:
    if "SLURM_ARRAY_TASK_ID" not in env:
      parser.error("--task_index=-1 reads SLURM_ARRAY_TASK_ID, which is not set (not in a "
                   "SLURM array job): give --task_index=i")
    task_index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
  if not 0 <= task_index < num_tasks:
    parser.error(f"task {task_index} is not one of the {num_tasks} tasks (0..{num_tasks - 1})")
  return task_index, num_tasks


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=pretokenize.__doc__.split("\n")[0])
  parser.add_argument("--source", default="embedded")
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--wikipedia_config", default="20230601.en")
  parser.add_argument("--try_gcs", action="store_true")
  parser.add_argument("--tokenizer", required=True, help="SentencePiece .model")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--splits", default="train")
  parser.add_argument("--shard_tokens", type=int, default=1 << 28)
  parser.add_argument("--max_tokens", type=int, default=0,
                      help="stop a split after about this many tokens (0: all)")
  parser.add_argument("--num_threads", type=int, default=0)
  parser.add_argument("--num_tasks", type=int, default=1,
                      help="split the work over this many parallel processes (0: "
                      "SLURM_ARRAY_TASK_COUNT)")
  parser.add_argument("--task_index", type=int, default=0,
                      help="this process's task (-1: SLURM_ARRAY_TASK_ID)")
  args = parser.parse_args(argv)
  args.task_index, args.num_tasks = _task(args.task_index, args.num_tasks, parser)
  source = sources_lib.make_source(
      {"source": args.source, "data_dir": args.data_dir,
       "wikipedia_config": args.wikipedia_config, "try_gcs": args.try_gcs})
  tokenizer = tokenizer_lib.load_tokenizer(args.tokenizer)
  for split in args.splits.split(","):
    start = time.time()
    index = pretokenize.pretokenize_split(source, tokenizer, split, args.output_dir,
                              shard_tokens=args.shard_tokens,
                              max_tokens=args.max_tokens,
                              num_threads=args.num_threads,
                              task_index=args.task_index,
                              num_tasks=args.num_tasks)
    tokens = sum(s["tokens"] for s in index["shards"])
    print(f"{split}: {tokens} tokens, {index['documents']} documents, "
          f"{len(index['shards'])} shards, skipped {index['skipped']} "
          f"({time.time() - start:.1f}s)", file=sys.stderr)


def run() -> None:
  """The command (`python -m ...` and the `mambaswelu-pretokenize` console script)."""
  main()


if __name__ == "__main__":
  run()
