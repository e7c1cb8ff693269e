"""Checkpoints layer: open a base model (builtin tiny, native folder, original remote-code layout) with its family
and tokenizer (load), map original layouts to native ones and back (original, convert), and write merged exports
(export)."""
