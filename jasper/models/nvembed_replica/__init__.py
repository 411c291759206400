"""The remote code of the NV-Embed-v2 stand-in (:mod:`jasper.models.replicas`): its two files are copied into the
replica's hub snapshot and loaded from there by ``trust_remote_code``, as nvidia/NV-Embed-v2's own files are.

Written for jasper after the interface of nvidia/NV-Embed-v2's ``configuration_nvembed.py`` / ``modeling_nvembed.py``
(the class names, the config keys, ``encode(prompts, instruction=..., max_length=...)``, ``add_eos``, right padding,
the instruction left out of the pooling): a tiny random Mistral and a latent-attention pooling in miniature that
gives 4096-d vectors. Nothing in jasper imports it."""
