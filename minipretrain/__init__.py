"""The parts the stage scripts use, one concern per module (README: "How the code is laid out").

settings      the shared defaults, settings parsing (flags, JSON/YAML, each value checked alike), UserError and run_main
stages        atomic output folders, manifest.json, fingerprints, resumable runs and their units
sources       readers of stage 1's inputs (jsonl, parquet, txt, hf:, .py, URLs), their units, Parquet batches
web           WARC, WET and HTML readers, charset decoding, main-text extraction
filters       stage 1's filters as plain functions: True or (False, reason)
cleaning      stage 1's unit of work: read a slice, extract, filters 1, 2, 5, digests and MinHash bands
dedup         exact (a digest) and near (MinHash LSH) de-duplication, corpus-wide, locally or on Ray
engines       where units run: this process, a pool of worker processes, or a Ray Data actor pool
report        stage 1's filter report: printed table and funnel chart
loading       bundled files, hub ids and safe from_pretrained (never a folder's code or a pickle)
modelfiles    checks of model files before a library reads them (fastText, GGUF, safetensors, JSON)
tokenization  loading tokenizers, document boundaries, fingerprints, batch tokenization
packing       stage 2's token stream, blocks and Parquet shards, and packed_dataset to read them
models        the base model, layer plans and surgery, loss over packed blocks
training      stage 4's callbacks, speed and MFU, loss chart, run folder and resume
"""
