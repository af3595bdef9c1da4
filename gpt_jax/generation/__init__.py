"""Generation apart from any training: generate(), beam search and streaming over a compiled
decode loop with a preallocated KV cache, with transformers' processors and stop strings.

The layers, each importing only those above it:
    config.py     GenerationConfig: the settings (transformers' names) and their checks
    checks.py     the inputs: lengths, sampling values, ids, key, prompts
    prompts.py    prompts left-padded into power-of-two buckets
    sampling.py   temperature / top-k / top-p / min-p filters, the draw
    processors.py repetition penalty, no-repeat n-grams, min_new_tokens; the per-step pick
    stopping.py   stop strings (transformers' StopStringCriteria tables)
    memory.py     what a decode needs, checked before anything is allocated
    step.py       the one-token decode step over a heads-major KV cache; prefill; weights
    channel.py    the host callback of a streamed decode
    loop.py       decode_tokens (prefill, then scan / while_loop) and DECODER, its compiled form
    beam.py       beam search (transformers' _beam_search) over the same step
    verify.py     speculative decoding's K+1-token verify step and its acceptance rules
    speculative.py prompt lookup / draft proposals and the verify loop (SPECULATOR)
    decoding.py   generate(), compile_generate(), generate_args(), generate_speculative(),
                  generate_uncached()
    streaming.py  generate_stream(): the loop's tokens as they are made
"""
from gpt_jax.generation.beam import beam_search
from gpt_jax.generation.config import GenerationConfig
from gpt_jax.generation.decoding import (compile_generate, generate, generate_args,
                                         generate_speculative, generate_uncached)
from gpt_jax.generation.loop import DECODER
from gpt_jax.generation.prompts import bucket_length, left_pad
from gpt_jax.generation.streaming import Piece, generate_stream

__all__ = ["DECODER", "GenerationConfig", "Piece", "beam_search", "bucket_length",
           "compile_generate", "generate", "generate_args", "generate_speculative",
           "generate_stream", "generate_uncached", "left_pad"]
