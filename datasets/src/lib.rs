//! Record types (SFT, preference, prompts), JSONL/Parquet readers and writers, validation,
//! the Llama 2 RM mixtures, the tokenized cache and the demo world. Not built yet: see issue 3.
