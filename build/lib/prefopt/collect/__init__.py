"""The collector: `prefopt collect rag` builds RAFT-style RAG preference triples."""
