// PrefetchQueue<T>: one producer thread fills a bounded queue ahead of the consumer, so
// loading and tokenising never stall training (slime's async SFT prefetch).
//
// Contract:
//  - The producer function runs on the queue's own thread, called repeatedly until it
//    returns nullopt (end of data) or throws. It must not be called from elsewhere meanwhile.
//  - pop() blocks until an item is ready and returns it in production order; after the last
//    item it returns nullopt. If the producer threw, pop() rethrows that exception once the
//    items produced before it have been popped, and every later pop() rethrows it again.
//  - depth() is the number of items ready now (the data/prefetch_queue_depth metric); any
//    thread may call it.
//  - The destructor stops the producer (after its current call returns) and joins it; items
//    not popped are dropped. pop() is for one consumer thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

namespace anvil::data {

template <typename T>
class PrefetchQueue {
 public:
  PrefetchQueue(std::function<std::optional<T>()> producer, size_t capacity)
      : producer_(std::move(producer)), capacity_(capacity < 1 ? 1 : capacity) {
    thread_ = std::thread([this] { run(); });
  }
  ~PrefetchQueue() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    not_full_.notify_all();
    thread_.join();
  }
  PrefetchQueue(const PrefetchQueue&) = delete;
  PrefetchQueue& operator=(const PrefetchQueue&) = delete;

  std::optional<T> pop() {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(lock, [&] { return !items_.empty() || done_; });
    if (!items_.empty()) {
      T item = std::move(items_.front());
      items_.pop_front();
      lock.unlock();
      not_full_.notify_one();
      return item;
    }
    if (error_) std::rethrow_exception(error_);
    return std::nullopt;
  }

  size_t depth() const {
    std::lock_guard<std::mutex> lock(mu_);
    return items_.size();
  }
  size_t capacity() const { return capacity_; }

 private:
  void run() {
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        not_full_.wait(lock, [&] { return items_.size() < capacity_ || stop_; });
        if (stop_) break;
      }
      std::optional<T> item;
      try {
        item = producer_();
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        error_ = std::current_exception();
        break;
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (!item) break;
      items_.push_back(std::move(*item));
      not_empty_.notify_one();
    }
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    not_empty_.notify_all();
  }

  std::function<std::optional<T>()> producer_;
  const size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable not_empty_, not_full_;
  std::deque<T> items_;
  bool stop_ = false, done_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: starts after every other member exists
};

}  // namespace anvil::data
