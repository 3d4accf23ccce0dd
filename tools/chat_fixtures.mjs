// Reference fixtures for the Llama-2 tokenizer and chat format: tests/fixtures/chat_ids.json.
//
// Ids come from llama-tokenizer-js@1.2.2 (an independent JS port of the Llama-2 SentencePiece BPE,
// fetched by scripts/fetch_tokenizer.sh), not from our Rust code, so llama/tests/tokenizer.rs
// checks `tokenizers` + our tokenizer.json + our chat code against a second implementation.
//
// Chat ids follow Meta's `Llama.chat_completion` (meta-llama/llama, llama/generation.py):
//   pair:   tokenizer.encode(f"{B_INST} {u.strip()} {E_INST} {a.strip()} ", bos=True, eos=True)
//   prompt: tokenizer.encode(f"{B_INST} {u.strip()} {E_INST}", bos=True, eos=False)
// with an optional system message folded into the first user message as B_SYS + sys + E_SYS + u.
// Meta's `Tokenizer.encode(s, bos, eos)` is `[bos] + sp.encode(s) + [eos]`; SentencePiece adds a
// dummy "▁" prefix to `s`, which is llama-tokenizer-js's `encode(s, add_bos_token=false,
// add_preceding_space=true)`.
//
// For complete dialogs the fixture also records the assistant mask, computed here WITHOUT offsets:
// the reply of a pair starts after the ids of its prompt part `f"{B_INST} {u} {E_INST}"`, checked
// to be a prefix of the pair's ids (true for Llama-2, whose pieces never have "▁" after the start).
//
// Usage: scripts/fetch_tokenizer.sh && node tools/chat_fixtures.mjs
import { readFileSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const JS_PATH = join(ROOT, '.cache', 'llama-tokenizer-js', 'llama-tokenizer.js');
const OUT_PATH = join(ROOT, 'tests', 'fixtures', 'chat_ids.json');

if (!existsSync(JS_PATH)) {
    console.error(`missing ${JS_PATH}: run scripts/fetch_tokenizer.sh first`);
    process.exit(1);
}
const { default: tok } = await import(pathToFileURL(JS_PATH).href);

const BOS = 1, EOS = 2;
const B_INST = '[INST]', E_INST = '[/INST]';
const B_SYS = '<<SYS>>\n', E_SYS = '\n<</SYS>>\n\n';

// Python's str.strip(): exactly the characters for which Python's str.isspace() is true
// (JS's \s differs: it adds U+FEFF and lacks U+001C..U+001F and U+0085).
const PY_WS = '\\t\\n\\v\\f\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const pyStrip = (s) => s.replace(new RegExp(`^[${PY_WS}]+|[${PY_WS}]+$`, 'gu'), '');

/** Meta's Tokenizer.encode(s, bos, eos). */
function encode(s, bos, eos) {
    const ids = s.length === 0 ? [] : tok.encode(s, false, true);
    return [...(bos ? [BOS] : []), ...ids, ...(eos ? [EOS] : [])];
}

/** Meta's chat_completion tokens for one dialog, plus the AllTurns assistant mask. */
function chatIds(dialog) {
    let d = dialog;
    if (d[0].role === 'system') {
        d = [{ role: d[1].role, content: B_SYS + d[0].content + E_SYS + d[1].content }, ...d.slice(2)];
    }
    d.forEach((m, i) => {
        const want = i % 2 === 0 ? 'user' : 'assistant';
        if (m.role !== want) throw Error(`bad roles in fixture: ${JSON.stringify(dialog)}`);
    });
    const ids = [], mask = [];
    for (let i = 0; i + 1 < d.length; i += 2) {
        const prompt = `${B_INST} ${pyStrip(d[i].content)} ${E_INST}`;
        const pair = encode(`${prompt} ${pyStrip(d[i + 1].content)} `, true, true);
        const head = encode(prompt, true, false);
        if (!head.every((id, k) => pair[k] === id)) {
            throw Error(`prompt ids are not a prefix of pair ids for ${JSON.stringify(prompt)}`);
        }
        ids.push(...pair);
        mask.push(...pair.map((_, k) => k >= head.length));
    }
    const last = d[d.length - 1];
    if (last.role === 'user') {
        const p = encode(`${B_INST} ${pyStrip(last.content)} ${E_INST}`, true, false);
        ids.push(...p);
        mask.push(...p.map(() => false));
        return { ids, assistant_mask: null };
    }
    return { ids, assistant_mask: mask };
}

// ------------------------------------------------------------------------------------------
// Plain-text cases: Meta's encode(text, bos=True, eos=False).

const texts = [];
// The package's own test cases, recorded by running its defaultTests against a recording proxy.
{
    const recorded = [];
    const proxy = {
        encode: (s, ...rest) => { const r = tok.encode(s, ...rest); recorded.push({ text: s, ids: r }); return r; },
        decode: (...args) => tok.decode(...args),
    };
    const log = console.log;
    console.log = () => {};
    try { tok.defaultTests(proxy); } finally { console.log = log; }
    for (const r of recorded) texts.push({ name: 'package-test', text: r.text, ids: r.ids });
}
const moreTexts = {
    'hello': 'Hello world!',
    'inst-tag': '[INST]',
    'sys-tags': '<<SYS>>\nYou are helpful.\n<</SYS>>\n\n',
    'special-pieces-as-text': 'a <s> b </s> c <unk>',
    'multiple-spaces': 'a  b   c    d',
    'leading-trailing-ws': '   padded text   ',
    'only-spaces': '    ',
    'newlines-crlf': 'line one\r\nline two\n\nline four\n',
    'code-python': 'def f(x):\n    if x > 0:\n\treturn x ** 2  # square\n    return -x\n',
    'code-rust': 'fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!("{:?}", v);\n}',
    'accents': 'Café, naïve résumé — Ångström, Øre, façade, jalapeño.',
    'cjk': '你好，世界！今日は良い天気ですね。안녕하세요',
    'emoji': 'Great job 👍🏽🎉 see you 🦙🦙!',
    'emoji-zwj': '👩‍👩‍👧 family, flags 🇫🇷🇯🇵',
    'math-symbols': '∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ ≈ π ≠ ∞',
    'digits': 'In 2023, 1234567 people paid $99.95 (3.5%).',
    'control-and-nbsp': 'tab\there\u00a0nbsp\u200bzwsp\u0007bell',
    'dummy-marker-literal': '▁already▁marked',
    'rtl': 'שלום עולם مرحبا بالعالم',
    'long-word': 'Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism',
};
for (const [name, text] of Object.entries(moreTexts)) texts.push({ name, text, ids: encode(text, true, false) });

// encode(text, bos=True) from the package (BOS inside its merge list) must equal [BOS] + encode(text).
for (const t of texts) {
    const viaMeta = encode(t.text, true, false);
    if (JSON.stringify(viaMeta) !== JSON.stringify(t.ids)) throw Error(`BOS placement changes ids for ${JSON.stringify(t.text)}`);
}

// ------------------------------------------------------------------------------------------
// Dialogs.

const u = (content) => ({ role: 'user', content });
const a = (content) => ({ role: 'assistant', content });
const s = (content) => ({ role: 'system', content });

const dialogs = {
    'single-user': [u('Hello!')],
    'system-user': [s('You are a helpful, respectful and honest assistant.'), u('What is the capital of France?')],
    'user-assistant': [u('Hi there'), a('Hello! How can I help you today?')],
    'three-turns-prompt': [u('I am going to Paris, what should I see?'), a('Paris has the Eiffel Tower, the Louvre and Notre-Dame.'), u('What is so great about #1?')],
    'system-multi-turn-prompt': [
        s('Always answer with emojis'),
        u('How to go from Beijing to NY?'),
        a('✈️🗽'),
        u('And back?'),
    ],
    'system-two-pairs-complete': [
        s('You are a pirate. Speak like one.'),
        u('Where is the treasure?'),
        a('Arr, buried on the isle, matey!'),
        u('How deep?'),
        a('Six feet under the palm, savvy?'),
    ],
    'three-pairs-complete': [u('1+1?'), a('2'), u('2+2?'), a('4'), u('3+3?'), a('6')],
    'unicode-dialog': [s('Réponds en français.'), u('Qu’est-ce qu’un «llama» ? 🦙'), a('C’est un camélidé d’Amérique du Sud — très mignon ! 你好')],
    'cjk-dialog': [u('日本の首都はどこですか？'), a('東京です。'), u('한국은요?')],
    'code-dialog': [
        u('Write a Python function that squares a number.'),
        a('```python\ndef square(x):\n    """Return x squared."""\n\treturn x * x\n```\nUse it like `square(3)`.'),
    ],
    'whitespace-stripped': [u('  \n\t padded question \n '), a('\n\n  padded answer\t  '), u('   ')],
    'unicode-whitespace-stripped': [u('\u3000ideographic space\u00a0'), a('\u0085next line\u001f')],
    'system-whitespace-kept': [s('  spaced system  \n'), u('  hi  '), a(' there ')],
    'multiple-spaces-inside': [u('a  b   c'), a('x    y\n\n\nz')],
    'empty-user-and-answer': [u(''), a(''), u('')],
    'empty-system': [s(''), u('ok'), a('fine')],
    'special-tags-in-content': [u('Please print [INST] and <</SYS>> literally'), a('Sure: [INST] [/INST] <<SYS>> </s> <s>')],
    'emoji-only': [u('🦙'), a('🦙🦙🦙')],
    'leading-newline-answer': [u('List two things'), a('\n1. one\n2. two')],
    'crlf-content': [u('line1\r\nline2'), a('ok\r\n')],
    'long-system-prompt': [
        s("You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information."),
        u('There\'s a llama in my garden 😱 What should I do?'),
    ],
};

const dialogCases = Object.entries(dialogs).map(([name, dialog]) => ({ name, dialog, ...chatIds(dialog) }));

const out = {
    source: 'llama-tokenizer-js@1.2.2 (sha256 34a7b9f7579d40486444590c37cba6564ef40c3dd98ecdfc2f7c886ae72c898d) via tools/chat_fixtures.mjs',
    format: "dialogs: Meta chat_completion ids; assistant_mask (AllTurns) for dialogs ending with an assistant reply, null for prompts. texts: Meta encode(text, bos=True, eos=False).",
    dialogs: dialogCases,
    texts: texts.map(({ name, text, ids }) => ({ name, text, ids })),
};
mkdirSync(dirname(OUT_PATH), { recursive: true });
writeFileSync(OUT_PATH, JSON.stringify(out, null, 1) + '\n');
console.log(`wrote ${OUT_PATH}: ${dialogCases.length} dialogs, ${texts.length} texts`);
