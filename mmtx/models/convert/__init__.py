"""Weight converters: other libraries' models read into mmtx's, one module per source.

    timm.py           timm VisionTransformer           -> mmtx.models.vit.from_timm,
                                                           load_timm_checkpoint
    hf_text.py        Hugging Face GPT-2 / BERT        -> mmtx.models.text.from_hf_gpt2,
                                                           from_hf_bert
    clip.py           Hugging Face / open_clip CLIP    -> mmtx.models.clip.from_hf_clip,
                                                           from_open_clip
    diffusers_dit.py  diffusers DiTTransformer2DModel  -> mmtx.models.dit.from_diffusers_dit

Each module reads a source model into two things: the arguments of the mmtx model that
reproduces it (an option mmtx cannot reproduce raises ValueError naming it) and its weights under
mmtx's names. It imports no mmtx model family, so each family module can import it; the public
`from_*` functions live with their family and only build the model in between. Only model
objects and files a user has are read: nothing is downloaded, nothing is unpickled.
"""
