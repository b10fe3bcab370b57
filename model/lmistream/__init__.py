"""lmistream: a streaming text-generation handler for DJL Serving (LMI), over transformers' continuous batching."""
