"""Tokenise text into train.bin / val.bin + meta.json for train.py --data DIR.

    python prepare.py --input notes.txt src/ --out_dir data/mine     # text files / directories
    python prepare.py --builtin --out_dir data/builtin               # Python's stdlib docs
    python prepare.py --hf_dataset Skylion007/openwebtext --out_dir data/owt   # needs `datasets`

Documents (files, or dataset rows) are GPT-2 BPE tokens, each followed by <|endoftext|>; every
10th document goes to val (with < 20 documents: the last 10% of the tokens). Everything is
checked before anything is written, and the new files replace an old prepared --out_dir only
once they are complete: a failed or interrupted prepare leaves the old data as it was.
A file named with --input that is not UTF-8 text is an error; one found in a directory is
skipped with a warning.
"""
import argparse
import signal
import sys


def parse_args(argv=None):
    from gpt_jax.cli.common import ArgumentParser
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH", help="text files or directories")
    src.add_argument("--builtin", action="store_true",
                     help="the built-in corpus (the docstrings and reference manual of "
                          "Python's standard library)")
    src.add_argument("--hf_dataset", metavar="NAME",
                     help="a Hugging Face dataset (pip install datasets; needs internet)")
    p.add_argument("--out_dir", required=True, help="where train.bin, val.bin, meta.json go")
    p.add_argument("--hf_config", default=None, help="dataset config (e.g. sample-10BT)")
    p.add_argument("--hf_split", default="train")
    p.add_argument("--hf_text_field", default="text")
    p.add_argument("--hf_max_docs", type=int, default=None,
                   help="stop after this many documents (streaming)")
    p.add_argument("--num_threads", type=int, default=None,
                   help="tokeniser threads (default: all cores)")
    p.add_argument("--batch_docs", type=int, default=256, help="documents per batch")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import gpt_jax.data.prepare as corpus
    from gpt_jax.errors import UserError
    # All checks first: a bad option must not cost the old data (or a long download).
    corpus.check_options(batch_docs=args.batch_docs, num_threads=args.num_threads)
    corpus.check_out_dir(args.out_dir)
    if args.hf_dataset and (args.hf_max_docs is None or args.hf_max_docs < 1):
        raise UserError("--hf_dataset needs --hf_max_docs N >= 1 (documents to take from the "
                        "stream; e.g. 8013769 is all of OpenWebText)")
    if args.builtin:
        meta = corpus.prepare_builtin(args.out_dir)
    elif args.hf_dataset:
        docs = corpus.hf_documents(args.hf_dataset, args.hf_config, args.hf_split,
                            args.hf_text_field, args.hf_max_docs)
        meta = corpus.prepare(docs, args.hf_max_docs, args.out_dir,
                            sources=[f"{args.hf_dataset}:{args.hf_config or ''}:{args.hf_split}"],
                            batch_docs=args.batch_docs, num_threads=args.num_threads)
    else:
        meta = corpus.prepare_files(args.input, args.out_dir, batch_docs=args.batch_docs,
                                  num_threads=args.num_threads)
    skipped = meta.get("skipped") or []
    print(f"wrote {args.out_dir}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} "
          f"val tokens from {meta['documents']} document(s)"
          + (f" ({len(skipped)} file(s) skipped as not text: see the warnings above)"
             if skipped else ""))
    return 0


def entry() -> None:
    """The console script (gpt-jax-prepare) and `python -m gpt_jax.cli.prepare`."""
    from gpt_jax.cli.common import run
    # SIGTERM (kill, a job scheduler) unwinds like Ctrl-C, so the staging files go too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    run(main)


if __name__ == "__main__":
    entry()
