"""Jinja constructs one at a time: `kiln template` against jinja2 (the oracle).

Each case is a small template plus variables; both renderers must agree on the
output, or both must fail. See test_chat_template_oracle.py for the oracle setup.
"""
import pytest

from test_chat_template_oracle import oracle, run_kiln

MSGS = [
    {"role": "system", "content": "  Sys prompt \n"},
    {"role": "user", "content": "Héllo, wörld! 🎉"},
    {"role": "assistant", "content": "<think>\nr\n</think>\n\nanswer"},
    {"role": "user", "content": "a,b,,c"},
]

CASES = {
    # whitespace control
    "trim_lstrip_blocks": "  {% if true %}\n    x\n  {% endif %}\n{# c #}\n  y {{ 1 }}\n",
    "dash_control": "a  {{- ' b ' -}}  c\n  {%- if true -%}  d  {%- endif -%}\n e",
    "plus_control": "a\n  {%+ if true %}b{% endif +%}\nc",
    "comment_dash": "x   {#- comment -#}   y",
    "trailing_newline": "line\n",
    "crlf_source": "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc",
    # expressions
    "arith": "{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 4 / 2 }} {{ 1 + 2.5 }} {{ 3 * 'ab' }}",
    "floats": "{{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1.5e-7 }} {{ 100.0 }} {{ 2.5 * 2 }} {{ -0.0 }}",
    "compare_chain": "{{ 1 < 2 < 3 }} {{ 3 > 2 > 5 }} {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }} {{ 1 == 1.0 }} {{ true == 1 }}",
    "logic": "{{ true and 5 }} {{ 0 or 'b' }} {{ not 0 }} {{ none or [] }} {{ '' and 1 }}",
    "membership": "{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'role' in messages[0] }} {{ 'x' not in messages[0] }}",
    "ternary": "{{ 'y' if messages else 'n' }}{{ 'never' if false }}|{{ 1 if 0 else 2 if 0 else 3 }}",
    "concat_tilde": "{{ 1 ~ 'a' ~ none ~ true ~ [1] }}",
    "repr_containers": "{{ [1, 'a', none, true, 1.5, {'k': ['v']}] }} {{ (1, 2) }} {{ (1,) }} {{ {'q': \"it's\"} }}",
    "repr_quotes": "{{ [\"it's\", 'say \"hi\"', 'both \\' \"', 'tab\\there\\n'] }}",
    "string_escapes": "{{ 'a\\tb\\\\c\\u00e9\\x41\\'' }}|{{ \"q\\\"\" }}|{{ 'unknown \\d' }}",
    "adjacent_strings": "{{ 'a' 'b' \"c\" }}",
    "indexing": "{{ messages[0]['role'] }} {{ messages[-1].content }} {{ messages[9] }} {{ messages.0.role }} {{ {'a': 1}['b'] }}",
    "slicing": "{{ 'abcdef'[1:4] }} {{ 'abcdef'[::-1] }} {{ 'abcdef'[::2] }} {{ [1,2,3,4][1:] }} {{ [1,2,3][:-1] }} {{ 'héllo'[1:3] }} {{ [1,2,3,4,5][4:0:-2] }}",
    "attribute_missing": "{{ messages[0].nothing }}|{{ none.x }}|{{ 'abc'.y }}|{{ messages[0].nothing is defined }}",
    "dict_literal_and_items": "{% for k, v in {'b': 1, 'a': [2]}.items() %}{{ k }}={{ v }};{% endfor %}{{ {'x': 1}.get('x') }}{{ {'x': 1}.get('y', 'd') }}{{ {'x': 1}.keys() | list }}{{ {'x': 1}.values() | list }}",
    # statements
    "for_loop_vars": "{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}|{% endfor %}",
    "for_prev_next": "{% for x in [1, 2, 3] %}{{ loop.previtem }}-{{ loop.nextitem }};{% endfor %}",
    "for_else": "{% for x in [] %}x{% else %}empty{% endfor %}{% for x in none_thing %}y{% else %}undef{% endfor %}",
    "for_filter": "{% for m in messages if m.role != 'system' %}{{ loop.index }}:{{ m.role }}{{ ',' if not loop.last }}{% endfor %}",
    "for_unpack": "{% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %}{% for (a, b) in [[5, 6]] %}{{ a * b }}{% endfor %}",
    "for_string_dict": "{% for c in 'hé' %}[{{ c }}]{% endfor %}{% for k in {'z': 1, 'y': 2} %}{{ k }}{% endfor %}",
    "loop_controls": "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}",
    "scoping": "{% set x = 0 %}{% for i in range(3) %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}{% if true %}{% set z = 3 %}{% endif %}{{ z }}",
    "namespace": "{% set ns = namespace(n=0, found=false) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% if m.role == 'user' %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.n }} {{ ns.found }}",
    "set_tuple_and_block": "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set blk %}<{{ messages[1].role }}>{% endset %}{{ blk | upper }}",
    "macro": "{% macro tag(name, close=false) %}<{{ '/' if close }}{{ name }}>{% endmacro %}{{ tag('a') }}{{ tag('a', close=true) }}{{ tag(name='b') }}",
    "if_elif_else": "{% for n in [1, 2, 3] %}{% if n == 1 %}one{% elif n == 2 %}two{% else %}other{% endif %} {% endfor %}",
    # tests
    "tests": "{{ none is none }} {{ 1 is number }} {{ 1.0 is float }} {{ 1 is integer }} {{ true is boolean }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 'a' is iterable }} {{ [] is sequence }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 'a' is in 'cat' }} {{ x is undefined }} {{ 'ab' is lower }} {{ 'AB' is upper }}",
    "tests_bool": "{{ false is false }} {{ 0 is false }} {{ true is true }} {{ 1 is true }} {{ false is sameas false }} {{ 2 is equalto 2 }} {{ 2 is eq 3 }} {{ 2 is ne 3 }} {{ 2 is gt 1 }} {{ 1 is lt 2 }} {{ 1 is not defined }}",
    # filters
    "trim_filters": "[{{ messages[0].content | trim }}][{{ '\u00a0 x \u3000' | trim }}][{{ 'xxaxx' | trim('x') }}]",
    "case_filters": "{{ 'hello world' | upper }} {{ 'HeLLo' | lower }} {{ 'hello wORLD' | title }} {{ 'hELLO' | capitalize }}",
    "length_filters": "{{ messages | length }} {{ 'héllo' | length }} {{ {'a': 1} | length }} {{ [1, 2] | count }} {{ undefined_x | length }}",
    "default_filter": "{{ x | default('d') }} {{ none | default('d') }} {{ none | default('d', true) }} {{ '' | d('e', boolean=true) }} {{ 0 | default(5) }}",
    "first_last": "{{ messages | first | tojson }} {{ (messages | last).role }} {{ 'abc' | first }} {{ [] | first }}",
    "join_filter": "{{ ['a', 'b', 'c'] | join(', ') }} {{ [1, 2] | join }} {{ messages | map(attribute='role') | join('/') }} {{ messages | join('|', attribute='role') }}",
    "replace_filter": "{{ 'aaa' | replace('a', 'b') }} {{ 'aaa' | replace('a', 'b', 2) }} {{ 'abc' | replace('', '-') }} {{ 'abc'.replace('b', 'XX') }}",
    "conversion_filters": "{{ '42' | int }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ 3.9 | int }} {{ '2.5' | float }} {{ 3 | float }} {{ 12 | string | length }} {{ 'ab' | list }} {{ (1, 2) | list }}",
    "tojson_filter": "{{ messages | tojson }}|{{ {'a': [1, 2.5, none, true, 'é\"\\\\\\n\\u0001']} | tojson }}|{{ [] | tojson }}|{{ {} | tojson(indent=2) }}|{{ {'a': [1, {'b': []}]} | tojson(indent=2) }}",
    "items_filter": "{% for k, v in {'a': 1, 'b': 2} | items %}{{ k }}{{ v }}{% endfor %}{% for k, v in missing | items %}x{% endfor %}",
    "select_reject": "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }} {{ messages | rejectattr('role', 'eq', 'user') | list | length }} {{ [0, 1, 2, ''] | select | list }} {{ ['a', 'code', 'b'] | reject('equalto', 'code') | list }} {{ messages | selectattr('nope') | list }}",
    "map_filter": "{{ ['a', 'B'] | map('upper') | list }} {{ messages | map(attribute='missing', default='d') | list }} {{ [[1], [2]] | map('first') | list }}",
    "misc_filters": "{{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ [3, 1] | sort(reverse=true) }} {{ [1, 1, 2] | unique | list }} {{ [1, 2] | reverse | list }} {{ 'abc' | reverse }} {{ -3 | abs }} {{ 2.567 | round(2) }} {{ 2.5 | round }} {{ 3.5 | round }} {{ 2.567 | round(1, 'floor') }} {{ 2.512 | round(1, 'ceil') }} {{ '<a&b>' | e }} {{ 'x' | safe }}",
    "indent_filter": "{{ 'a\nb\n\nc' | indent }}|{{ 'a\nb' | indent(2, true) }}|{{ 'a\n\nb' | indent(width='>', blank=true) }}",
    # string methods
    "string_methods": "{{ '  x  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '\\n\\nhi'.lstrip('\\n') }}|{{ 'hi  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}|{{ 'hello world'.title() }}|{{ 'abc'.upper() }}{{ 'ABC'.lower() }}|{{ 'abcb'.find('b') }}{{ 'héllo'.find('l') }}{{ 'abcb'.count('b') }}|{{ '-'.join(['a', 'b']) }}",
    "qwen_think_split": "{% set c = messages[2].content %}{{ c.split('</think>')[-1].lstrip('\\n') }}|{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}",
    # globals
    "range_fn": "{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(5, 0, -2) | list }}",
    "raise_fn": "{% if messages | length > 1 %}{{ raise_exception('too many: ' ~ messages | length) }}{% endif %}",
    "strftime_is_string": "{{ strftime_now('%Y') | length }}",
    "dict_fn": "{{ dict(a=1, b='x') | tojson }}",
    # errors on both sides
    "error_undefined_attr": "{{ nothing.attr }}",
    "error_type": "{{ 1 + 'a' }}",
    "error_none_concat": "{{ messages[0].content + none }}",
}


# jinja2 warns about the deliberate unknown escape (backslash-d) in string_escapes.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", sorted(CASES))
def test_construct_matches_jinja2(kiln_bin, tmp_path, name):
    source = CASES[name]
    template_path = tmp_path / "t.jinja"
    template_path.write_bytes(source.encode("utf-8"))
    kind, expected = oracle(source, MSGS, False, {})
    rc, out, err = run_kiln(kiln_bin, tmp_path, template_path, MSGS, False, {})
    if kind == "ok":
        assert rc == 0, err
        assert out == expected
    else:
        assert rc == 1, f"jinja2: {expected}; kiln rendered {out!r}"
        if kind == "raised":
            assert f"error: {expected}" in err
