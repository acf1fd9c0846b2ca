"""The easy-VQA demo: parts built from scratch, LLaVA-format data from the `easy-vqa` package, two training recipes
(shipped in `tinyllava_hf/resources/recipes/easy_vqa/`) and the pipeline that runs them (`tinyllava-hf demo`). The
measurements that chose its size are in `docs/demo_measurements.md`.

- `tinyllava_hf.demo.data`: pretrain captions, finetune questions and the test question/answer files.
- `tinyllava_hf.demo.parts`: a BPE tokenizer, a tiny Llama LM and a small SigLIP tower, saved as HF folders.
- `tinyllava_hf.demo.pipeline`: the whole run, from parts to the scored checkpoint and its card.
- `tinyllava_hf.demo.run`: what the runs of all three demos (text, `spoken`, `smollm2`) share: the output folder,
  the time of each step, a recipe stage through `tinyllava-hf train`, the results file, plot and card.
"""
