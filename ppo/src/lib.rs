//! PPO with the Llama 2 combined reward (Llama 2 Section 3.2.3). Not built yet: see issue 7.
