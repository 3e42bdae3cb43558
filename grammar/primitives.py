"""The shared GBNF rules every converted grammar draws from, and the string formats.

Rules are declared once per grammar, by name, when first used.
"""

from __future__ import annotations

#: Whitespace between tokens in the generation shape: none or one space. Layout is not content,
#: and a model given newlines and indentation to choose from spends tokens on them and loses
#: its way more often (measured in bench/extraction.py); llama-cpp-python's converter does the
#: same. The spec-faithful shape takes "space" below.
SPACE_COMPACT = '| " "'

PRIMITIVES: dict[str, str] = {
    "space": '| " " | "\\n" [ \\t]{0,20}',
    "boolean": '("true" | "false") space',
    "null": '"null" space',
    # \u escapes of surrogates are left out: a pair would count as two characters
    # here and as one in JSON Schema's length; such characters are written as UTF-8.
    "char": ('[^"\\\\\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" ( [0-9a-cA-C] [0-9a-fA-F]{3} | '
             '[dD] [0-7] [0-9a-fA-F]{2} | [eEfF] [0-9a-fA-F]{3} ))'),
    "string": '"\\"" char* "\\"" space',
    # the rest of an extra member's name (written without escapes: see the key tries)
    "key-tail": '[^"\\\\\\x00-\\x1F]*',
    "integral-part": '[0] | [1-9] [0-9]{0,15}',
    "decimal-part": "[0-9]{1,16}",
    # at most two exponent digits: every number the grammar admits is a finite double
    # (json.loads reads 9e9999 as inf, which validation keywords such as multipleOf cannot
    # take), and no extraction plausibly needs a magnitude past 1e99
    "number": '("-"? integral-part) ("." decimal-part)? ([eE] [-+]? [0-9]{1,2})? space',
    "integer": '("-"? integral-part) space',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
    "array": '"[" space ( value ("," space value)* )? "]" space',
}
PRIMITIVE_DEPS = {
    "boolean": ["space"], "null": ["space"], "string": ["char", "space"],
    "number": ["integral-part", "decimal-part", "space"], "integer": ["integral-part", "space"],
    "value": ["object", "array", "string", "number", "boolean", "null"],
    "object": ["string", "value", "space"], "array": ["value", "space"],
}

# Calendar-exact dates: days per month, 29 February only in leap years, no year 0000
# (which Python's date, and so validation, refuses).
_YEAR = '( [0-9]{3} [1-9] | [0-9]{2} [1-9] "0" | [0-9] [1-9] "00" | [1-9] "000" )'
_LEAP_YEAR = ('( [0-9]{2} ( "0" [48] | [2468] [048] | [13579] [26] ) | '
              '( "0" [48] | [2468] [048] | [13579] [26] ) "00" )')
_DATE = (f'( {_YEAR} "-" ( ( "0" [13578] | "1" [02] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] ) | '
         '( "0" [469] | "11" ) "-" ( "0" [1-9] | [12] [0-9] | "30" ) | '
         '"02-" ( "0" [1-9] | "1" [0-9] | "2" [0-8] ) ) | '
         f'{_LEAP_YEAR} "-02-29" )')
_TIME = ('( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,9} )? '
         '( [Zz] | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )')
_OCTET = '( "25" [0-5] | "2" [0-4] [0-9] | "1" [0-9] [0-9] | [1-9]? [0-9] )'
# Hostnames (RFC 1123 labels, as the fqdn package checks them): at most 8 labels of at most
# 30 characters keeps every name within the 253 characters a grammar cannot count here.
_LABEL = '[A-Za-z0-9] ( [A-Za-z0-9-]{0,28} [A-Za-z0-9] )?'
_HOSTNAME = f'{_LABEL} ( "." {_LABEL} ){{0,7}}'
# URIs (RFC 3986): a subset of its syntax, what rfc3986-validator accepts. "/" separates
# segments, so the repetitions do not nest ambiguously. IP literals ("[...]") are left out.
_UNRESERVED = "A-Za-z0-9._~!$&'()*+,;=\\-"
_PCT = '"%" [0-9A-Fa-f] [0-9A-Fa-f]'
_PCHAR = f'( [{_UNRESERVED}:@] | {_PCT} )'
_SEGMENTS = f'( "/" {_PCHAR}* )*'
_QUERY = f'( "?" ( {_PCHAR} | [/?] )* )? ( "#" ( {_PCHAR} | [/?] )* )?'
_AUTHORITY = (f'( ( [{_UNRESERVED}:] | {_PCT} )* "@" )? ( [{_UNRESERVED}] | {_PCT} )* '
              '( ":" [0-9]{0,5} )?')
_HIER = (f'( "//" {_AUTHORITY} {_SEGMENTS} | "/" ( {_PCHAR}+ {_SEGMENTS} )? | '
         f'{_PCHAR}+ {_SEGMENTS} )?')
_SCHEME = '[A-Za-z] [A-Za-z0-9+.-]{0,31}'
_URI = f'{_SCHEME} ":" {_HIER} {_QUERY}'
_NOSCHEME = f'( [{_UNRESERVED}@] | {_PCT} )+ {_SEGMENTS}'
_RELATIVE = (f'( "//" {_AUTHORITY} {_SEGMENTS} | "/" ( {_PCHAR}+ {_SEGMENTS} )? | '
             f'{_NOSCHEME} )? {_QUERY}')
FORMATS: dict[str, str] = {
    "hostname": _HOSTNAME,
    "uri": _URI,
    "uri-reference": f"( {_URI} | {_RELATIVE} )",
    "date": _DATE,
    "time": _TIME,
    "date-time": f"{_DATE} [Tt] {_TIME}",
    "uuid": ('[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
             "[0-9a-fA-F]{12}"),
    "ipv4": f'{_OCTET} "." {_OCTET} "." {_OCTET} "." {_OCTET}',
    "email": '[A-Za-z0-9._%+-]{1,64} "@" [A-Za-z0-9-]{1,63} ( "." [A-Za-z0-9-]{1,63} ){1,8}',
}
