// Final-answer extraction and normalisation for math rewards (--rm-type math), following
// the rules of slime's rm_hub math grader (Hendrycks' MATH normalisation): the answer is
// the content of the last \boxed{...} (or \fbox{...}); both sides are normalised (spaces,
// \left/\right, \dfrac/\tfrac, \frac12 -> \frac{1}{2}, a/b -> \frac{a}{b}, units in
// \text{ ...}, degrees, dollars, percent, "x = " prefixes, 0.5 -> \frac{1}{2}) and compared
// as strings, then as numbers (integers, decimals, thousands separators, simple
// fractions; |a - b| <= 1e-6 * max(1, |b|)), then by exact rational evaluation of simple
// arithmetic (see normalized_answers_equal). No symbolic algebra: expressions with
// variables or radicals that are equal only after simplification are not matched.
#pragma once

#include <optional>
#include <string>

namespace anvil::reward {

// The content of the last \boxed{...} / \fbox{...} with balanced braces, or nullopt.
std::optional<std::string> last_boxed(const std::string& text);

// The normalised form of an answer string.
std::string normalize_math_answer(std::string answer);

// Whether `given` (an extracted answer) equals `truth` (a label, itself possibly boxed).
bool math_answers_equal(const std::string& given, const std::string& truth);

// Equality of two normalised answers: the same string; or both evaluate to the same exact
// rational (integers, decimals, \frac{a}{b}, a/b, + - * / ^ and
// parentheses: "0.75" == "3/4" == "\frac{1}{2}+\frac{1}{4}"; percent signs are dropped by
// the normalisation, so "75\%" == "75"); or tuples /
// intervals with the same brackets whose elements are equal pairwise; or numbers within
// 1e-6 relative (decimals too long for exact evaluation).
bool normalized_answers_equal(const std::string& a, const std::string& b);

// 1 when the response's boxed answer equals the label, else 0 (no boxed answer: 0).
double math_reward(const std::string& response, const std::string& label);

}  // namespace anvil::reward
