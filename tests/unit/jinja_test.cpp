#include "rollout/data/jinja/jinja.hpp"
#include <gtest/gtest.h>
TEST(Jinja, Smoke) { EXPECT_EQ(anvil::jinja::Template::parse("a{{ 1 + 2 }}").render(nlohmann::json::object()), "a3"); }
