"""Stage-1 inference: multi-scale CAMs per image (:mod:`.cams`) and seed label maps (:mod:`.seeds`)."""
