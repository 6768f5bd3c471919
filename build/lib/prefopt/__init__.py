"""prefopt: RAFT-style RAG preference data, then SFT and DPO/IPO with LoRA under DeepSpeed."""

__version__ = "0.1.0"
