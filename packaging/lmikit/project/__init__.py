"""A project on its way to model.tar.gz: its layout and serving.properties read once (layout, properties), the checks
before a build (validate, adapter_check, and images against the deploy image's Python stack, image_stacks) and the
tarball itself (tarball)."""
