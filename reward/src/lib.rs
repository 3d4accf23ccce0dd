//! Helpfulness and safety reward models (Llama 2 Section 3.2.2). Not built yet: see issue 5.
