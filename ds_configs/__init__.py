"""DeepSpeed configs (zero2, zero3, zero3_offload), shipped inside the package as prefopt.ds_configs."""
