"""The easy-VQA demo: parts built from scratch, LLaVA-format data from the `easy-vqa` package, and the measurements
that chose its size (`docs/demo_measurements.md`).

- `tinyllava_hf.demo.data`: pretrain captions, finetune questions and the test question/answer files.
- `tinyllava_hf.demo.parts`: a BPE tokenizer, a tiny Llama LM and a small SigLIP tower, saved as HF folders.
- `tinyllava_hf.demo.explore`: a measurement script (plain PyTorch loop), not part of the product path.
"""
