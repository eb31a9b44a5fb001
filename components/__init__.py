"""One thin KFP component per pipeline stage; each calls ``g1core.stages.run_stage_json``.

``images.image_for(stage)`` reads the stage's container image from ``images/images.yaml``, the one
table of image names and versions.
"""
