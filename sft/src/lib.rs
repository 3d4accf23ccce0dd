//! Supervised fine-tuning (Llama 2 Section 3.1). Not built yet: see issue 4.
